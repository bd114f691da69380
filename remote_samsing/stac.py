"""STAC input: the raster assets of a STAC Item or ItemCollection, one per item, read with pystac.

The asset is ``asset`` when given; otherwise the one whose roles include
``visual`` (the true-colour image STAC's best practices name), else the only
raster asset with the ``data`` role (or no role), else the only raster asset of
any other role, else an error listing the assets to choose from. Thumbnails,
overviews and metadata are never chosen unless named.
"""

from __future__ import annotations

import json

from ._files import join_location
from ._progress import counted
from .exceptions import InputError

__all__ = ["asset_hrefs"]

# previews and side files: never the image to segment unless named with ``asset``
_PREVIEW_ROLES = frozenset({"thumbnail", "overview", "metadata"})
_RASTER_TYPES = ("image/tiff", "image/jp2", "image/png", "image/jpeg", "image/vnd.stac.geotiff")


def _is_raster(asset) -> bool:
    media = (asset.media_type or "").lower()
    return any(media.startswith(t) for t in _RASTER_TYPES) or asset.href.lower().endswith(
        (".tif", ".tiff", ".jp2", ".vrt"))


def _is_usable(asset) -> bool:
    """A raster asset that is the item's image, not a preview or a side file."""
    return _is_raster(asset) and not _PREVIEW_ROLES.intersection(asset.roles or [])


def _describe(key: str, asset) -> str:
    """``key (media type; roles)``: what an error lists so the user can choose."""
    facts = [asset.media_type or "no media type", "roles " + ", ".join(asset.roles) if asset.roles else "no roles"]
    return f"{key} ({'; '.join(facts)})"


def _choose(item, asset: str | None, location: str) -> str:
    """The key of the asset to read from ``item``."""
    assets = item.assets
    listing = ", ".join(_describe(k, a) for k, a in assets.items()) or "none"
    if asset is not None:
        if asset not in assets:
            raise InputError(f"STAC item `{item.id}` in `{location}` has no asset `{asset}`",
                             hint=f"its assets: {', '.join(assets) or 'none'}")
        return asset
    visual = [k for k, a in assets.items() if "visual" in (a.roles or [])]
    if len(visual) == 1:
        return visual[0]
    usable = [k for k, a in assets.items() if _is_usable(a)]
    # assets with role `data` (or none) first: other roles (`reflectance`, ...) only when they are alone
    candidates = [k for k in usable if "data" in (assets[k].roles or []) or not assets[k].roles] or usable
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"STAC item `{item.id}` in `{location}` has no usable raster asset; its assets: {listing}",
                         hint="pass --asset NAME to read one of them anyway")
    raise InputError(f"STAC item `{item.id}` in `{location}` has no asset with role `visual` and "
                     f"{counted(len(candidates), 'candidate raster assets')}: {', '.join(candidates)}",
                     hint=f"pick one with --asset NAME; its assets: {listing}")


def _is_plain_geojson(data, kind) -> bool:
    """A GeoJSON Feature or FeatureCollection of features that are no STAC Items (buildings, fields)."""
    if kind == "Feature":
        return "stac_version" not in data
    features = data.get("features") if kind == "FeatureCollection" else None
    return bool(features) and not any(isinstance(f, dict) and "stac_version" in f for f in features)


def asset_hrefs(location: str, text: str, *, asset: str | None = None) -> list[str]:
    """The href of the chosen asset of each item in the STAC JSON ``text`` read from ``location``,
    made absolute against ``location``.

    Raises
    ------
    InputError
        The JSON is not a STAC Item or ItemCollection, or an item has no
        usable asset.
    """
    import pystac

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"`{location}` is not JSON: {exc}", hint="pass a STAC Item or ItemCollection") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if _is_plain_geojson(data, kind):
        raise InputError(f"`{location}` is not a STAC Item or ItemCollection but plain GeoJSON (no `stac_version`)",
                         hint="pass the rasters to segment, or the STAC items that list them")
    try:
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        elif kind == "Feature" and "stac_version" in data:
            items = [pystac.Item.from_dict(data, preserve_dict=False)]
        else:
            items = None
    except (KeyError, TypeError, ValueError, pystac.STACError, pystac.STACTypeError) as exc:
        raise InputError(f"`{location}` is not a valid STAC Item or ItemCollection: {exc!r}") from None
    if items is None:
        raise InputError(f"`{location}` is neither a STAC Item nor an ItemCollection (type {kind!r})",
                         hint="a STAC catalog or collection: pass the items' JSON, or list their assets in an @FILE")
    if not items:
        raise InputError(f"the STAC ItemCollection `{location}` holds no item")
    if any(link.get("rel") == "next" for link in data.get("links") or [] if isinstance(link, dict)):
        raise InputError(f"the STAC ItemCollection `{location}` is one page of several (it links to a `next` page)",
                         hint="save all pages' items into one ItemCollection (e.g. pystac-client's "
                              "`item_collection()`), or list their assets in an @FILE")
    return [join_location(location, item.assets[_choose(item, asset, location)].href) for item in items]
