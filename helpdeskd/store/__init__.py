"""The flat-file state directory: tickets, indexes, ledgers, outbox, quarantine. See the README's layout."""
