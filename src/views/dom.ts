/** A tiny DOM builder: the views are plain DOM inside Lumino widgets, no framework needed. */

type Attrs = { [key: string]: string | number | boolean | null | undefined };
type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (key === 'className') {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.append(child);
  }
  return el;
}

/** Parse a kernel CPU list ("0-3,8,10-11") into CPU numbers. */
export function parseCpuList(text: string | null | undefined): number[] {
  const out: number[] = [];
  if (!text) {
    return out;
  }
  for (const part of text.split(',')) {
    const piece = part.trim();
    if (!piece) {
      continue;
    }
    const [a, b] = piece.split('-').map(x => parseInt(x, 10));
    if (Number.isNaN(a)) {
      continue;
    }
    const end = b === undefined || Number.isNaN(b) ? a : b;
    for (let cpu = a; cpu <= end; cpu++) {
      out.push(cpu);
    }
  }
  return out;
}

/** A stable colour per cluster name, so a cluster looks the same on the map and its card. */
export function clusterColour(name: string): string {
  let hash = 0;
  for (let i = 0; i < name.length; i++) {
    hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
  }
  return `hsl(${hash % 360}, 65%, 45%)`;
}

export function formatDuration(seconds: number): string {
  if (seconds < 0) {
    return '0s';
  }
  if (seconds < 120) {
    return `${Math.round(seconds)}s`;
  }
  if (seconds < 7200) {
    return `${Math.round(seconds / 60)}m`;
  }
  return `${(seconds / 3600).toFixed(1)}h`;
}

export function formatBytes(n: number | null): string {
  if (n === null || n <= 0) {
    return 'no limit';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}
