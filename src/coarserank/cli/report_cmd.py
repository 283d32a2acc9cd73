"""distill commands: report_cmd (being written)."""
