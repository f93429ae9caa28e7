"""ApiToken now belongs to the common app (its table stays): state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("webapp", "0002_roles"), ("common", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiToken")], database_operations=[]
        ),
    ]
