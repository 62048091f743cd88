"""The tamper-evident audit log: one hash-chained record per decision.

``record`` serialises and chains; ``base`` is the sink interface with its
``sqlite`` and ``postgres`` implementations (chosen by ``factory``); ``log``
is the group-committing ``AuditLog`` the data plane records in; ``verify``
finds the first bad record.
"""

from xserve.audit.base import AuditSink, Head, Query, Snapshot
from xserve.audit.factory import DISABLED, audit_log_from_settings, sink_from_url
from xserve.audit.log import AuditLog
from xserve.audit.record import GENESIS, Record
from xserve.audit.verify import Verdict, verify, verify_sink

__all__ = [
    "DISABLED",
    "GENESIS",
    "AuditLog",
    "AuditSink",
    "Head",
    "Query",
    "Record",
    "Snapshot",
    "Verdict",
    "audit_log_from_settings",
    "sink_from_url",
    "verify",
    "verify_sink",
]
