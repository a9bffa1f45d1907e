"""esft: continual fine-tuning of LLMs with Evolution Strategies (ES) and Anchored Weight Decay (AWD)."""

__version__ = "0.1.0"
