#!/usr/bin/env bash
# Makes docs/img/progress.png, README's picture of the progress bar: runs `dmd2 distill` on the tiny recipe in
# a real terminal (tmux), captures the screen with its colours mid-run and renders it with headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
tmux kill-session -t dmd2shot 2>/dev/null || true
tmux new-session -d -s dmd2shot -x 150 -y 12 "cd $PWD && node bin/dmd2.js distill recipes/tiny.yaml --set run_dir=$tmp/run --set train.steps=3000 --set train.checkpoint_every=100000; sleep 30"
for _ in $(seq 1 600); do
  if tmux capture-pane -p -t dmd2shot | grep -qE ' (1[0-9]{3})/3000 steps'; then break; fi
  sleep 0.1
done
tmux capture-pane -e -p -t dmd2shot > "$tmp/screen.ansi"
tmux kill-session -t dmd2shot
.venv/bin/python - "$tmp/screen.ansi" "$tmp/screen.html" <<'PY'
import html, re, sys
colors = {30: "#555", 31: "#e06c75", 32: "#98c379", 33: "#e5c07b", 34: "#61afef", 35: "#c678dd", 36: "#56b6c2", 37: "#ddd", 90: "#888", 39: None}
out, style = [], {}
for part in re.split(r"(\x1b\[[0-9;]*m)", open(sys.argv[1]).read().rstrip() + "\n"):
    m = re.fullmatch(r"\x1b\[([0-9;]*)m", part)
    if m:
        for code in [int(c or 0) for c in m.group(1).split(";")]:
            if code == 0: style = {}
            elif code == 2: style["opacity"] = "0.6"
            elif code == 22: style.pop("opacity", None)
            elif code in colors:
                if colors[code]: style["color"] = colors[code]
                else: style.pop("color", None)
        continue
    css = ";".join(f"{k}:{v}" for k, v in style.items())
    out.append(f'<span style="{css}">{html.escape(part)}</span>' if css else html.escape(part))
open(sys.argv[2], "w").write('<html><body style="margin:0;background:#1e1e1e"><pre style="margin:0;padding:12px;color:#ddd;'
                             'font:14px DejaVu Sans Mono,monospace">' + "".join(out) + "</pre></body></html>")
PY
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp/chrome" --hide-scrollbars \
  --window-size=1180,240 --screenshot="$PWD/docs/img/progress.png" "file://$tmp/screen.html" 2>/dev/null
echo "wrote docs/img/progress.png"
