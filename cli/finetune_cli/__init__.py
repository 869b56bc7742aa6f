"""`finetune`: the command line and the local runners (run, sweep, predict, advise).

The top layer: it imports the API, the trainer (lazily) and the operator package's
pure cores; nothing imports it.
"""
