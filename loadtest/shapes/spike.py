"""Spike: a quarter of -u for the first 40% of -t, all -u for the next 20%, a quarter again after."""

from locust import LoadTestShape

from loadtest.schedules import spike_users


class Spike(LoadTestShape):
    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        users = spike_users(self.get_run_time(), options.num_users, options.run_time)
        # The spike's users arrive at once, whatever the spawn rate says.
        return None if users is None else (users, max(options.spawn_rate, users))
