"""Step ramp: the users grow in equal steps to -u over the run time -t (--steps, default 4)."""

from locust import LoadTestShape

from loadtest.schedules import step_users


class StepRamp(LoadTestShape):
    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        users = step_users(self.get_run_time(), options.num_users, options.run_time, options.steps)
        return None if users is None else (users, options.spawn_rate)
