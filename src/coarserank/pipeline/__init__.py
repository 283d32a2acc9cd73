"""pipeline subpackage."""
