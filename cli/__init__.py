"""The ``inferbus`` command line: knows every part; nothing imports it."""
