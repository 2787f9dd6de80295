"""No source file names a teacher family outside its adapter files, the registry and its readers (docs/adapters.md,
"Adding a family"): family knowledge lives in families.json. The rules are in family_names.py."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from family_names import registry_names, scan_project, scan_python, scan_ts  # noqa: E402

NAMES, PIPELINES, _ = registry_names()


def test_no_source_file_names_a_family():
    hits = scan_project()
    assert not hits, ("family knowledge outside the registry (read it from families.json through families.py / "
                      "src/families.ts instead):\n" + "\n".join(map(str, hits)))


def test_the_check_sees_family_names_in_python_code_and_strings():
    bad = {
        'if family == "sdxl":\n    pass\n': "sdxl",
        'x = net.sd15\n': "sd15",
        'KIND = {"unet2d": 1}\n': "unet2d",
        'msg = "needs a StableDiffusionXLPipeline folder"\n': "StableDiffusionXLPipeline",
        'msg = f"a {x} StableDiffusionPipeline"\n': "StableDiffusionPipeline",
        "ok = f\"{family == 'sdxl'}\"\n": "sdxl",
    }
    for source, name in bad.items():
        assert [h.name for h in scan_python(source, "x.py", NAMES, PIPELINES)] == [name], source


def test_the_check_leaves_prose_and_imports_alone():
    fine = ('"""Docstrings may say SDXL, sdxl or StableDiffusionXLPipeline."""\n'
            "# so may comments: sdxl, StableDiffusionPipeline\n"
            "from .models.unet2d import UNet2DNet\n"
            'path = "runs/sd15-1step"\n')
    assert scan_python(fine, "x.py", NAMES, PIPELINES) == []
    ts = ('// sdxl in a comment\n/* StableDiffusionXLPipeline */\nimport { x } from "./unet2d.js";\n'
          'const help = "dmd2 sample runs/sd15-1step";\n')
    assert scan_ts(ts, "x.ts", NAMES, PIPELINES) == []


def test_the_check_sees_family_names_in_typescript():
    bad = {
        'if (family === "sdxl") run();\n': "sdxl",
        "const t = { sd15: 1 };\n": "sd15",
        "const m = `a ${family === 'sdxl' ? 'x' : 'y'} z`;\n": "sdxl",
        "const m = `needs a StableDiffusionPipeline ${x}`;\n": "StableDiffusionPipeline",
        "const n = plan.unet2d;\n": "unet2d",
    }
    for source, name in bad.items():
        assert [h.name for h in scan_ts(source, "x.ts", NAMES, PIPELINES)] == [name], source
