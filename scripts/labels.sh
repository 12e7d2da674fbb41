#!/usr/bin/env bash
# The committed labels (data/labels, data/README.md) and the label caches, both ways.
#
#   scripts/labels.sh restore DATA_LABELS CACHE
#       copy DATA_LABELS/video/*.jsonl.gz into CACHE/labels and DATA_LABELS/speech/*.jsonl.gz into
#       CACHE/speech-labels, unzipped; a file already in the cache is kept (same name = same clip
#       content and detector or recognizer settings, so the same labels).
#   scripts/labels.sh save VIDEO_LABEL_DIR SPEECH_LABEL_DIR DATA_LABELS
#       replace DATA_LABELS/video and DATA_LABELS/speech with gzip copies (no name or date in the
#       gzip header, so the same labels give the same bytes) of the label files of those folders.
set -euo pipefail

restore_kind() {   # from to
    local from=$1 to=$2 file target
    [ -d "$from" ] || return 0
    mkdir -p "$to"
    for file in "$from"/*.jsonl.gz; do
        [ -e "$file" ] || continue
        target="$to/$(basename "$file" .gz)"
        [ -e "$target" ] && continue
        gunzip -c "$file" > "$target.partial"      # renamed when whole: never a torn label file
        mv "$target.partial" "$target"
    done
}

save_kind() {   # from to
    local from=$1 to=$2 file
    ls "$from"/*.jsonl >/dev/null 2>&1 || { echo "labels.sh: no label files in $from" >&2; exit 1; }
    rm -rf "$to.partial"
    mkdir -p "$to.partial"
    for file in "$from"/*.jsonl; do
        gzip -n -9 -c "$file" > "$to.partial/$(basename "$file").gz"
    done
    rm -rf "$to"
    mv "$to.partial" "$to"
}

case "${1:-}" in
    restore)
        [ $# -eq 3 ] || { echo "usage: $0 restore DATA_LABELS CACHE" >&2; exit 2; }
        restore_kind "$2/video" "$3/labels"
        restore_kind "$2/speech" "$3/speech-labels"
        ;;
    save)
        [ $# -eq 4 ] || { echo "usage: $0 save VIDEO_LABEL_DIR SPEECH_LABEL_DIR DATA_LABELS" >&2; exit 2; }
        save_kind "$2" "$4/video"
        save_kind "$3" "$4/speech"
        echo "labels.sh: $(ls "$4/video" | wc -l) video and $(ls "$4/speech" | wc -l) speech label files in $4"
        ;;
    *)
        echo "usage: $0 restore DATA_LABELS CACHE | save VIDEO_LABEL_DIR SPEECH_LABEL_DIR DATA_LABELS" >&2
        exit 2
        ;;
esac
