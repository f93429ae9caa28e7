"""AuditEvent moves from the compliance app to audit; its table (compliance_auditevent) and the
PostgreSQL append-only trigger on it (compliance migration 0002) stay as they are.

State only: on a new database compliance's migrations have just made the table and trigger.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [("compliance", "0002_append_only_trigger")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("seq", models.PositiveBigIntegerField(editable=False, unique=True)),
                        ("at", models.DateTimeField(db_index=True, editable=False)),
                        ("actor", models.CharField(editable=False, max_length=150)),
                        ("action", models.CharField(db_index=True, editable=False, max_length=100)),
                        (
                            "target",
                            models.CharField(blank=True, db_index=True, editable=False, max_length=200),
                        ),
                        ("data", models.JSONField(blank=True, default=dict, editable=False)),
                        ("prev_hash", models.CharField(editable=False, max_length=64, unique=True)),
                        ("hash", models.CharField(editable=False, max_length=64, unique=True)),
                        ("signature", models.CharField(editable=False, max_length=100)),
                        ("signer_key", models.CharField(editable=False, max_length=64)),
                    ],
                    options={"ordering": ["seq"], "get_latest_by": "seq", "db_table": "compliance_auditevent"},
                ),
            ],
            database_operations=[],
        ),
    ]
