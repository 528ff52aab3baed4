"""Write SVG screenshots of the app on the demo model into screenshots/.

`make screenshots` runs this. Each view is driven headless with ``run_test`` at a
fixed terminal size and saved with ``App.save_screenshot``; the SVGs depend only
on what is on screen, so rerunning it without a change rewrites the same files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from llmtune.model import read_spec
from llmtune.model.demo import DEMO_FILE, fetch_demo_model
from llmtune.ui.app import make_app

REPO = Path(__file__).resolve().parent.parent
SIZES = ((120, 40), (80, 24), (50, 40))
# Where the demo model is cached differs between machines and users; the pictures
# show its default place on Linux rather than the path of whoever ran this.
DEMO_PATH_LABEL = f"~/.cache/llmtune/models/{DEMO_FILE}"


async def save(model: Path, size: tuple[int, int], out_dir: Path, path_label: str | None) -> Path:
    app = make_app(read_spec(model), path_label=path_label)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        width, height = size
        written = app.save_screenshot(f"model-{width}x{height}.svg", path=str(out_dir))
    return Path(written)


async def main_async(model: Path, out_dir: Path, path_label: str | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [await save(model, size, out_dir, path_label) for size in SIZES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="a .gguf file (default: the demo model)")
    parser.add_argument("--out", type=Path, default=REPO / "screenshots", help="output folder")
    args = parser.parse_args(argv)
    model = args.model or fetch_demo_model()
    # A model given by hand shows its real path; the demo model shows a fixed one.
    label = None if args.model else DEMO_PATH_LABEL
    for path in asyncio.run(main_async(model, args.out, label)):
        try:
            shown = path.resolve().relative_to(Path.cwd())
        except ValueError:
            shown = path
        print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
