"""Seeded synthetic aerial scenes: a suburban orthophoto with pools and trees.

:func:`make_scene` writes a georeferenced GeoTIFF that looks like a ~0.3 m/pixel
aerial photograph of a suburb at the edge of farmland (streets, houses with
roofs of varied colours and cast shadows, lawns, fields) together with the
outlines of two object classes, ready to be exported as training chips:

* ``pool`` (``Classvalue`` 1): swimming pools, rectangles, rounded rectangles and
  kidney/free-form shapes, 12-60 px long, with a light coping border;
* ``tree`` (``Classvalue`` 2): tree crowns, 8-45 px across, isolated, in rows
  along streets and in dense clusters where crowns touch and overlap.

Unlabelled look-alikes are drawn too: blue roofs, tarps, solar panels, cars and
sports courts (pool-like), light-green shrubs (tree-like), dark shadows and lawns.

The scene is planned once as vector shapes in pixel coordinates, then rendered
and written block by block (1024 x 1024 windows), so even an 8192 x 8192 scene
never holds the whole raster in memory. Every texture is a function of the
global pixel position (hashed value noise), so the output does not depend on
the block size, and the same arguments always give identical pixels and labels.

Examples:
    >>> import tempfile
    >>> from geolearn.sample import make_scene
    >>> files = make_scene(tempfile.mkdtemp(), size=256, seed=1)
    >>> files.raster.name, files.labels.name
    ('scene.tif', 'scene_labels.gpkg')

The package's modules, in the order the work flows: :mod:`~geolearn.sample.palette` (materials
and draw layers), :mod:`~geolearn.sample.noise` (textures), :mod:`~geolearn.sample.shapes`
(vector shapes), :mod:`~geolearn.sample.render` (drawing operations),
:mod:`~geolearn.sample.planner` (the layout) and :mod:`~geolearn.sample.scene` (``make_scene``:
plan, render block by block, write). It is a tool of the demo, the docs and the tests; nothing
in the library's data, model, training or inference layers imports it.
"""

from geolearn.sample.scene import CLASSES, SceneFiles, make_scene

__all__ = ["SceneFiles", "make_scene", "CLASSES"]
