"""The command-line layer: one module per command group, each with ``register(app)``.

Commands parse options, call one library function and render the result. No logic a test would want to
call lives here.
"""
