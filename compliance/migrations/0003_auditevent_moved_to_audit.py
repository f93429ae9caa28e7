"""AuditEvent now belongs to the audit app (its table and trigger stay): state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("compliance", "0002_append_only_trigger"), ("audit", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")], database_operations=[]
        ),
    ]
