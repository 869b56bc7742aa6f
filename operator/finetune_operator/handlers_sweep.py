"""kopf handlers for HyperparameterSweep (filled in by the sweep work)."""
