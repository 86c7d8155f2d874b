"""clipdash inside the trainers people already use: one callback each.

    from clipdash.integrations.transformers import ClipdashCallback   # transformers.Trainer
    from clipdash.integrations.lightning import ClipdashCallback      # lightning.Trainer

This package imports neither framework: each submodule imports its own when it is imported, and
says which extra to install (`pip install 'clipdash[transformers]'`) when it is missing.
"""
