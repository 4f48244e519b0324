"""``authdb doctor``'s checks of a deployment, each one status and one line, writing nothing.

``examine(settings)`` runs them all; ``authdb.cli.doctor`` only presents the results.
"""

from authdb.doctor.findings import Result, Status
from authdb.doctor.run import CHECKS, examine

__all__ = ["CHECKS", "Result", "Status", "examine"]
