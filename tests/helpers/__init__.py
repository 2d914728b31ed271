"""Code the tests share: import it as ``from tests.helpers.MODULE import NAME``.

- :mod:`.toy_home`: the toy data home (plans, cache and raw labels built in code) that the
  training, experiment and benchmark tests train on;
- :mod:`.known_networks`: a network with a known answer and plans for the prediction tests.

Fixtures stay in each folder's ``conftest.py``; those fixtures use these helpers.
"""
