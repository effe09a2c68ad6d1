"""The `odecore` command line's applications: training ODE-Net / RK-Net / ResNet classifiers
(`odecore train`), Table 1 of Chen et al. 2018 (`odecore table1`), the SDE-Net experiments
(`odecore train sdenet`) and the demos, with the offline data and detection metrics they use.

The library never imports this package; the dispatch is `odecore.apps.cli`.
"""
