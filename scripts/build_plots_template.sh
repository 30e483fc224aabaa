#!/usr/bin/env bash
# Build the offline HTML template for `dvc plots show` / `dvc plots diff`.
#
# Why: dvc-render's default page pulls vega, vega-lite and vega-embed from a CDN,
# so the plots stay blank on a machine without internet. This template inlines
# the three browser bundles from their npm packages instead, and leaves out the
# `scripts` placeholder so dvc-render's CDN <script> tags are dropped.
#
# Usage:  bash scripts/build_plots_template.sh [OUTPUT]   (default: .dvc/plots/offline.html)
# Wire-up: dvc config plots.html_template plots/offline.html   (path is relative to .dvc/)
# Needs:   npm (registry access), tar, sha256sum, GNU sed.
set -euo pipefail

# Same major versions as dvc-render 1.0.2's CDN tags (vega@5.20.2,
# vega-lite@5.2.0, vega-embed@6.18.2); exact versions and tarball hashes make
# the output byte-for-byte reproducible. All three are BSD-3-Clause.
VEGA=5.33.1
VEGA_LITE=5.23.0
VEGA_EMBED=6.29.0
TARBALL_SHA256="\
1b8504b6731c5311be3269c4d84ca996a5cc293bc772283293ede20c490e16c3  vega-$VEGA.tgz
e4cbfdd8f6f1abe381c59cd558fd6a559c12b1496bfdf2e0c3295263a40fe4da  vega-lite-$VEGA_LITE.tgz
ecf1ee709c2bac9e0a4ead6908114b05b62c71493e10a8a4308109bb070f8eb1  vega-embed-$VEGA_EMBED.tgz"

out=${1:-.dvc/plots/offline.html}
tmp="$out.tmp.$$"   # written beside the output, then renamed: never half a template
work=$(mktemp -d)
trap 'rm -rf "$work" "$tmp"' EXIT

(cd "$work" && npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null)
(cd "$work" && echo "$TARBALL_SHA256" | sha256sum --check --quiet) \
    || { echo "build_plots_template: npm tarball hash mismatch (see above)" >&2; exit 1; }

# Print one bundle as an inline <script>. dvc-render fills the template with
# str.replace on {scripts}, {plot_divs} and {refresh_tag}, so a bundle holding
# one of those strings would be corrupted; "</script" would end the tag early.
inline_bundle() {  # $1 = tarball, $2 = bundle path inside the package
    local dir="$work/${1%.tgz}"
    mkdir -p "$dir"
    tar -xzf "$work/$1" -C "$dir" "package/$2"
    if grep -q -e '{scripts}' -e '{plot_divs}' -e '{refresh_tag}' "$dir/package/$2"; then
        echo "build_plots_template: $1:$2 contains a dvc-render placeholder" >&2
        exit 1
    fi
    echo "<script>"
    sed 's#</script#<\\/script#gI' "$dir/package/$2"
    echo
    echo "</script>"
}

mkdir -p "$(dirname "$out")"
{
    cat <<EOF
<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Offline template: vega $VEGA, vega-lite $VEGA_LITE, vega-embed $VEGA_EMBED
         (BSD-3-Clause, UW Interactive Data Lab) inlined from npm by
         scripts/build_plots_template.sh. No CDN is contacted. -->
EOF
    inline_bundle "vega-$VEGA.tgz" build/vega.min.js
    inline_bundle "vega-lite-$VEGA_LITE.tgz" build/vega-lite.min.js
    inline_bundle "vega-embed-$VEGA_EMBED.tgz" build/vega-embed.min.js
    cat <<'EOF'
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
EOF
} > "$tmp"
mv "$tmp" "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"
