"""The training layer: arcgis.learn's ``RetinaNet`` on a fastai ``Learner``, its callbacks and evaluation."""
