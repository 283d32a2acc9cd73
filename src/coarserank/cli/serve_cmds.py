"""distill commands: serve_cmds (being written)."""
