"""The offline demo dataset: a seeded synthetic catalogue with real PNG images and templated text.

Written in the raw Amazon 2014 formats (gzipped JSON reviews, Python-literal metadata, images on disk) so
that ``mrdib prepare demo`` runs exactly the code path of ``mrdib prepare baby``. Users choose items through
planted attributes of four kinds (see ``docs/demo-dataset.md``):

* redundant: ``colour`` -- the fill colour of the drawn object *and* a colour word in the title;
* image-only: ``shape`` (circle, square, triangle, star) and ``texture`` (solid, stripes, dots, checks),
  visible only in the pixels;
* text-only: ``material`` (cotton, leather, bamboo, steel, wool) and ``size`` (small, large), written
  only in the text;
* synergistic: ``fit = busy(texture) XOR (size == large)``, which neither modality reveals alone;

plus noise: product noun, brand and filler sentences in the text, background tint, clutter and jitter in
the images, and a share of interactions chosen at random.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrdib_cli.data.rawfmt import write_meta, write_reviews
from mrdib_cli.errors import UsageError
from mrdib_cli.workspace import TMP_PREFIX, atomic_write_json, digest_obj, file_lock, honour_umask

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60), "yellow": (240, 210, 30),
           "purple": (140, 50, 190), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle", "star")
TEXTURES = ("solid", "stripes", "dots", "checks")
BUSY = {"stripes", "checks"}
MATERIALS = ("cotton", "leather", "bamboo", "steel", "wool")
MATERIAL_TEXT = {
    "cotton": "Made from soft breathable cotton fabric.",
    "leather": "Crafted from genuine leather with stitched edges.",
    "bamboo": "Built from sustainable bamboo wood.",
    "steel": "Made of brushed stainless steel metal.",
    "wool": "Knitted from warm merino wool yarn.",
}
SIZES = ("small", "large")
SIZE_TEXT = {"small": "Compact, small size that fits in a pocket.",
             "large": "Generous large size for the whole family."}
NOUNS = ("blanket", "bottle", "rattle", "bib", "pillow", "toy", "bag", "mat", "cup", "hat")
BRANDS = ("Lumo", "Bexley", "Nimbo", "Quokka", "Tindra", "Orla", "Pemberly", "Zuzu", "Kallo", "Merrow")
FILLERS = ("Great gift for any occasion.", "Easy to clean.", "Ships in recyclable packaging.",
           "Loved by parents everywhere.", "Backed by a one-year warranty.", "Perfect for travel.",
           "A customer favourite.", "Simple to assemble.", "Suitable for everyday use.")


@dataclass
class DemoConfig:
    """Sizes and strengths of the synthetic catalogue (all results are a function of these)."""

    n_users: int = 2000
    n_items: int = 1000
    n_interactions: int = 20000
    image_size: int = 64
    seed: int = 0
    weight: float = 2.0  # strength of each planted preference (log-odds per matching attribute)
    noise: float = 0.1  # share of interactions chosen at random
    duplicate_rate: float = 0.005  # exact duplicate reviews (dropped by prepare, counted in the card)

    def validate(self) -> None:
        if self.n_users < 10 or self.n_items < 10:
            raise UsageError("demo needs at least 10 users and 10 items (--users, --items)")
        if self.n_interactions < 5 * self.n_users:
            raise UsageError(f"demo needs --interactions >= 5 x --users ({5 * self.n_users}) so that every "
                             "user survives the 5-core")
        if self.n_interactions > self.n_users * self.n_items // 2:
            raise UsageError("--interactions must be at most half of users x items")
        if not 16 <= self.image_size <= 512:
            raise UsageError("--image-size must be between 16 and 512 pixels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def slug(self) -> str:
        return digest_obj({"v": 2, **self.to_dict()}).split(":")[1][:12]


# ------------------------------------------------------------------------------------------- catalogue
def sample_items(cfg: DemoConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Planted attributes of each item (indices into the value tuples)."""
    n = cfg.n_items
    a = {"colour": rng.integers(0, len(COLOURS), n), "shape": rng.integers(0, len(SHAPES), n),
         "texture": rng.integers(0, len(TEXTURES), n), "material": rng.integers(0, len(MATERIALS), n),
         "size": rng.integers(0, len(SIZES), n), "noun": rng.integers(0, len(NOUNS), n),
         "brand": rng.integers(0, len(BRANDS), n)}
    busy = np.isin(np.array(TEXTURES)[a["texture"]], list(BUSY))
    a["fit"] = (busy ^ (a["size"] == 1)).astype(np.int64)
    a["popularity"] = rng.normal(0.0, 0.6, n)
    return a


def sample_interactions(cfg: DemoConfig, items: dict[str, np.ndarray],
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Each user's items: Gumbel-top-n of attribute-match scores, plus random noise picks."""
    U, I = cfg.n_users, cfg.n_items
    prefs = {"colour": rng.integers(0, len(COLOURS), U), "shape": rng.integers(0, len(SHAPES), U),
             "material": rng.integers(0, len(MATERIALS), U), "fit": rng.integers(0, 2, U)}
    extra = cfg.n_interactions / U - 5
    n_u = 5 + rng.poisson(max(extra, 0.0), U)
    n_u = np.minimum(n_u, I // 2)
    score = 0.4 * items["popularity"][None, :]
    for attr, p in prefs.items():
        score = score + cfg.weight * (items[attr][None, :] == p[:, None])
    score = score + rng.gumbel(size=(U, I))
    rank = np.argsort(-score, axis=1)
    take = np.arange(I)[None, :] < n_u[:, None]
    users = np.repeat(np.arange(U), n_u)
    chosen = rank[take]  # row-major: each user's top n_u items, in order
    noisy = rng.random(len(chosen)) < cfg.noise
    chosen = chosen.copy()
    chosen[noisy] = rng.integers(0, I, int(noisy.sum()))
    # a noise pick may repeat one of the user's items: keep each (user, item) once
    key = users * I + chosen
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    return users[first], chosen[first], prefs


# ------------------------------------------------------------------------------------------- text
def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    j = int(rng.integers(1, len(word) - 2))
    return word[:j] + word[j + 1] + word[j] + word[j + 2:]


def item_text(a: dict[str, np.ndarray], i: int, rng: np.random.Generator) -> dict[str, Any]:
    """Title/brand/categories/description of item ``i``: colour, material and size in words, plus noise.

    The planted words lead the title and the description so that a sentence encoder's embedding is
    dominated by them; brand, product noun and one filler sentence are the noise.
    """
    colour = list(COLOURS)[a["colour"][i]]
    noun = NOUNS[a["noun"][i]]
    size = SIZES[a["size"][i]]
    material = MATERIALS[a["material"][i]]
    title = f"{colour.capitalize()} {material} {noun}, {size}"
    sentences = [MATERIAL_TEXT[material], SIZE_TEXT[size], str(rng.choice(FILLERS))]
    desc = " ".join(sentences[k] for k in (*rng.permutation(2), 2))
    if rng.random() < 0.05:  # noisy text: a typo in the filler sentence
        words = desc.split()
        k = int(rng.integers(len(words) - 3, len(words)))
        words[k] = _typo(words[k], rng)
        desc = " ".join(words)
    rec: dict[str, Any] = {"title": title, "categories": [["Demo", "Nursery", noun.capitalize()]],
                           "description": desc, "price": round(float(rng.uniform(5, 60)), 2)}
    if rng.random() > 0.03:
        rec["brand"] = BRANDS[a["brand"][i]]
    return rec


# ------------------------------------------------------------------------------------------- images
def draw_item(a: dict[str, np.ndarray], i: int, size: int, rng: np.random.Generator):
    """A PNG-ready Pillow image: textured coloured shape on a tinted, cluttered background."""
    from PIL import Image, ImageDraw

    s = size
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # clutter: thin grey lines and specks
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, s, 4))
        g = int(rng.integers(120, 200))
        d.line((x0, y0, x1, y1), fill=(g, g, g), width=1)
    base = np.array(COLOURS[list(COLOURS)[a["colour"][i]]], dtype=np.int64)
    col = tuple(int(v) for v in np.clip(base + rng.integers(-20, 21, 3), 0, 255))
    dark = tuple(int(v * 0.55) for v in col)
    r = s * float(rng.uniform(0.30, 0.40))
    cx, cy = s / 2 + rng.uniform(-0.08, 0.08) * s, s / 2 + rng.uniform(-0.08, 0.08) * s
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    shape = SHAPES[a["shape"][i]]
    if shape == "circle":
        md.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "square":
        md.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=255)
    elif shape == "triangle":
        md.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=255)
    else:
        ang = np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        md.polygon([(float(cx + q * np.cos(t)), float(cy - q * np.sin(t))) for q, t in zip(rad, ang)], fill=255)
    fill = Image.new("RGB", (s, s), col)
    fd = ImageDraw.Draw(fill)
    tex = TEXTURES[a["texture"][i]]
    step = max(4, s // 10)
    if tex == "stripes":
        for x in range(-s, 2 * s, step):
            fd.line((x, 0, x + s, s), fill=dark, width=max(1, step // 3))
    elif tex == "dots":
        for x in range(step // 2, s, step):
            for y in range(step // 2, s, step):
                fd.ellipse((x - step / 4, y - step / 4, x + step / 4, y + step / 4), fill=dark)
    elif tex == "checks":
        big = step * 3 // 2
        for x in range(0, s, big):
            for y in range(0, s, big):
                if (x // big + y // big) % 2 == 0:
                    fd.rectangle((x, y, x + big - 1, y + big - 1), fill=dark)
    img.paste(fill, (0, 0), mask)
    return img


# ------------------------------------------------------------------------------------------- writer
def _asins(n: int) -> list[str]:
    return [f"D{k:09d}" for k in range(n)]


def _reviewers(n: int) -> list[str]:
    return [f"DEMOU{k:07d}" for k in range(n)]


def generate_raw(cfg: DemoConfig, out_dir: Path, log: Callable[[str], None] = lambda s: None) -> Path:
    """Write ``reviews_Demo_5.json.gz``, ``meta_Demo.json.gz``, ``images/`` and ``attributes.csv``.

    Deterministic in ``cfg``; a folder that is already complete (``generator.json`` matches) is reused.
    Written to a temp folder and renamed, so a half-generated demo never looks complete.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.parent / f".{out_dir.name}.lock", what=f"demo files {out_dir}"):
        return _generate_locked(cfg, out_dir, log)


def _generate_locked(cfg: DemoConfig, out_dir: Path, log: Callable[[str], None]) -> Path:
    marker = out_dir / "generator.json"
    if marker.exists() and json.loads(marker.read_text()) == cfg.to_dict():
        return out_dir
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + out_dir.name + ".", dir=out_dir.parent))
    honour_umask(tmp)
    try:
        rng = np.random.default_rng(cfg.seed)
        a = sample_items(cfg, rng)
        users, items, prefs = sample_interactions(cfg, a, rng)
        asins, revs = _asins(cfg.n_items), _reviewers(cfg.n_users)
        times = 1_300_000_000 + rng.integers(0, 3 * 365 * 86400, len(users))
        match = sum((a[k][items] == prefs[k][users]).astype(np.int64) for k in prefs)
        ratings = np.clip(np.round(1.5 + 0.8 * match + rng.normal(0, 0.6, len(users))), 1, 5)
        dup = np.flatnonzero(rng.random(len(users)) < cfg.duplicate_rate)
        order = np.concatenate([np.arange(len(users)), dup])
        order = order[np.argsort(items[order], kind="stable")]  # like the release: grouped by product
        write_reviews(tmp / "reviews_Demo_5.json.gz", (
            {"reviewerID": revs[users[k]], "asin": asins[items[k]], "reviewerName": f"user {users[k]}",
             "helpful": [0, 0], "reviewText": "Synthetic review.", "overall": float(ratings[k]),
             "summary": "demo", "unixReviewTime": int(times[k]), "reviewTime": ""} for k in order))
        text_rng = np.random.default_rng([cfg.seed, 1])
        write_meta(tmp / "meta_Demo.json.gz",
                   ({"asin": asins[i], **item_text(a, i, text_rng)} for i in range(cfg.n_items)))
        img_dir = tmp / "images"
        img_dir.mkdir()
        img_rng = np.random.default_rng([cfg.seed, 2])
        for i in range(cfg.n_items):
            draw_item(a, i, cfg.image_size, img_rng).save(img_dir / f"{asins[i]}.png", optimize=False)
        _write_attributes(tmp / "attributes.csv", asins, a)
        atomic_write_json(tmp / "preferences.json", {k: v.tolist() for k, v in prefs.items()})
        atomic_write_json(tmp / "generator.json", cfg.to_dict())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"generated demo catalogue: {cfg.n_items:,} items with {cfg.image_size}px PNGs, "
        f"{len(users):,} interactions of {cfg.n_users:,} users in {out_dir}")
    return out_dir


def _write_attributes(path: Path, asins: list[str], a: dict[str, np.ndarray]) -> None:
    """The planted ground truth, for analyses of what each modality carries."""
    rows = ["asin,colour,shape,texture,material,size,fit,noun,brand"]
    for i, asin in enumerate(asins):
        rows.append(",".join([asin, list(COLOURS)[a["colour"][i]], SHAPES[a["shape"][i]],
                              TEXTURES[a["texture"][i]], MATERIALS[a["material"][i]], SIZES[a["size"][i]],
                              str(int(a["fit"][i])), NOUNS[a["noun"][i]], BRANDS[a["brand"][i]]]))
    path.write_text("\n".join(rows) + "\n")
