"""seqrec expectations: Great Expectations suites as code (see ``expectations.suites``)."""

from expectations.suites import TABLES, Check, build_suite, list_checks, suite_parameters

__all__ = ["TABLES", "Check", "build_suite", "list_checks", "suite_parameters"]
