"""jaxlab: pure-function model definitions and transforms for the science of scaling."""

__version__ = "0.1.0"
