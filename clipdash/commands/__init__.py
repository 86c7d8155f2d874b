"""One module per `clipdash` subcommand: `add_arguments(parser)` and `run(args) -> int`.

Module tops import only the standard library and the torch-free store; heavy imports go in run().
"""
