"""Facts about this machine that the scheduler and the engines plan with."""


def available_memory() -> int:
    """Bytes the kernel could give out now without swapping (MemAvailable); 4 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30
