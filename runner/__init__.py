"""signoff: declarative YAML workflows with human checkpoints."""

__version__ = "0.1.0"
