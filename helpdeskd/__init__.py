"""helpdeskd: an email-first helpdesk daemon with a flat-file ticket store."""

__version__ = "0.1.0"
