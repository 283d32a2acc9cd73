"""cold subpackage."""
