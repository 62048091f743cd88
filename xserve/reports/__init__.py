"""Compliance reports and decision notices, from the audit log and the model repository.

``data`` gathers (``traffic`` reads the audit log, ``analysis`` computes), ``content``,
``card``, ``sections`` and ``notice`` write a renderer-neutral ``document``, which ``html``
and ``pdf`` render; ``plots`` draws the figures; ``run`` writes the files.
"""
