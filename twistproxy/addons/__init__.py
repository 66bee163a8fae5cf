"""
Built-in addons: the flow log line and the loader for ``--addon`` files.
"""
