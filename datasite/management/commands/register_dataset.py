"""``manage.py register_dataset``: validate a LeRobot SO-100 folder and register it."""

from django.core.management.base import BaseCommand, CommandError

from common.errors import ServiceError
from datasite.datasets import register_dataset


class Command(BaseCommand):
    help = "Register a LeRobot v3.0 SO-100 dataset folder with its privacy budget (ε_max, δ)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="name other parties will use")
        parser.add_argument("--root", required=True, help="the dataset folder")
        parser.add_argument("--epsilon-max", type=float, required=True, help="budget across all studies")
        parser.add_argument("--delta", type=float, default=1e-5)

    def handle(self, *args, name, root, epsilon_max, delta, **options):
        try:
            ds = register_dataset(name, root, epsilon_max, delta)
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        contributors = len(set(ds.contributors().values()))
        self.stdout.write(
            self.style.SUCCESS(
                f"registered {ds.name}: {ds.num_episodes} episodes, {ds.num_frames} frames, "
                f"{contributors} contributors, budget ε={epsilon_max:g} at δ={delta:g}"
            )
        )
