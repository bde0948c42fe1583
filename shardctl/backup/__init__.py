"""Backups and point-in-time recovery of the local stack: every server's WAL archived continuously by pgBackRest
(one stanza per server, one repository per stack), base backups, consistent restore points taken on every server
at once under the write fence, and restores of the whole stack to one of them as a new stack.

Modules, one job each: ``settings`` (the ``backup`` section), ``pgbackrest`` (the tool: found, configured, run as
the server user), ``archiving`` (each server's ``archive_command``, set before it starts), ``points`` (consistent
restore points), ``base`` (base backups, list, verify) and ``restore`` (a new stack at a point). The first three
sit below the stack's lifecycle, which starts servers with archiving on; the others sit above the stack.
"""
