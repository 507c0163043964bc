import os

import tinylm


def pytest_report_header(config):
    return f'tinylm {tinylm.__version__} from {tinylm.__file__}'


def pytest_configure(config):
    # Under pytest-xdist (`-n auto`: one worker per core) the workers share the cores: torch's default of one thread per core in each of them
    # oversubscribes the machine and every parallel op waits for a descheduled thread (14b_threads: 2 threads run at
    # x0.45-0.56 of one on a busy machine). One thread per worker; child processes still choose their own.
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch
        torch.set_num_threads(1)
