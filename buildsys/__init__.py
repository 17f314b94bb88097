"""buildsys: declarative Keras image classifiers, built, verified and published as versioned artifacts.

Model definitions import from `buildsys.dsl`; everything else is internal. Importing `buildsys` must stay cheap
(no TensorFlow), because a no-op build has to finish in well under a second.
"""

__version__ = "0.1.0"
