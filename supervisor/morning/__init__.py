"""The morning after: graveyard export, report, import of upstream results."""
