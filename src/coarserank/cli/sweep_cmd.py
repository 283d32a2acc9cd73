"""distill commands: sweep_cmd (being written)."""
