"""Complaint store: models, migrations, sealing and the blob store."""
