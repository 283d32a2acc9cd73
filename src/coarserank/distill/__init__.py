"""distill subpackage."""
