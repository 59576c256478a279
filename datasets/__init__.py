"""The shipped datasets, installed as the package ``attnkit_datasets``.

Only data lives here (and the scripts that made it); look files up with
``ak.datasets`` (:mod:`attnkit.data.shipped`), which finds this folder from
anywhere: in a checkout and in an installed wheel.
"""
