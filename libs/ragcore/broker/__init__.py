"""The broker seen from outside: queue depths, oldest waiting task, consumers."""
