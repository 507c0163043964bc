import tinylm


def pytest_report_header(config):
    return f'tinylm {tinylm.__version__} from {tinylm.__file__}'
