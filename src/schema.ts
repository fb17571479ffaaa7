/**
 * The launch form's fields, read from the profile JSON Schema, and their client-side checks.
 *
 * Why from the schema: a new backend (Slurm: partition, walltime, memory...) adds its section to
 * the schema and appears in the form without a UI change.  The checks cover the keywords the
 * schema uses (type, enum, const, anyOf, minimum, exclusiveMinimum, minLength, pattern); the
 * server validates again, and its errors name the same dotted field.
 */
import { ISchema } from './tokens';

/** Profile fields that are configuration, not per-launch choices. */
const SKIP = new Set(['backend', 'env', 'worker-options']);

export interface IField {
  /** Dotted field as the server names it in errors: `workers`, `adapt.minimum`, `local.host`. */
  path: string;
  /** The key sent in `overrides` (backend settings are sent flat: `host`). */
  override: string;
  /** For object fields (adapt): the sub-key, else null. */
  sub: string | null;
  schema: ISchema;
  nullable: boolean;
}

function types(s: ISchema): string[] {
  if (s.type === undefined) {
    return [];
  }
  return Array.isArray(s.type) ? s.type : [s.type];
}

export function formFields(
  profile: ISchema,
  backends: { [name: string]: ISchema },
  backend: string
): IField[] {
  const out: IField[] = [];
  const props = profile.properties ?? {};
  for (const [key, node] of Object.entries(props)) {
    if (SKIP.has(key) || key in backends) {
      continue;
    }
    const t = types(node);
    if (t.includes('object')) {
      for (const [sub, subNode] of Object.entries(node.properties ?? {})) {
        out.push({ path: `${key}.${sub}`, override: key, sub, schema: subNode, nullable: t.includes('null') });
      }
      continue;
    }
    out.push({ path: key, override: key, sub: null, schema: node, nullable: t.includes('null') });
  }
  const section = backends[backend];
  for (const [key, node] of Object.entries(section?.properties ?? {})) {
    out.push({ path: `${backend}.${key}`, override: key, sub: null, schema: node, nullable: types(node).includes('null') });
  }
  return out;
}

export type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

/** Words for what a schema accepts (mirrors `describe()` in `_config_check.py`). */
export function describe(s: ISchema): string {
  if (s.enum) {
    return 'one of ' + s.enum.map(v => String(v)).join(', ');
  }
  if (s.const !== undefined) {
    return JSON.stringify(s.const);
  }
  if (s.anyOf) {
    return s.anyOf.map(describe).join(' or ');
  }
  const t = types(s).filter(x => x !== 'null');
  let text = t.length ? t.map(x => (x === 'integer' ? 'an integer' : `a ${x}`)).join(' or ') : 'a value';
  if (s.minimum !== undefined) {
    text += ` >= ${s.minimum}`;
  }
  if (s.exclusiveMinimum !== undefined) {
    text += ` > ${s.exclusiveMinimum}`;
  }
  if (types(s).includes('null')) {
    text += ' (empty: none)';
  }
  return text;
}

/** Check a JSON value against a schema node; null when valid, else the reason. */
export function check(s: ISchema, value: unknown): string | null {
  if (s.anyOf) {
    return s.anyOf.some(alt => check(alt, value) === null) ? null : `expected ${describe(s)}`;
  }
  if (s.const !== undefined) {
    return value === s.const ? null : `expected ${describe(s)}`;
  }
  if (s.enum) {
    return s.enum.includes(value) ? null : `expected ${describe(s)}`;
  }
  const t = types(s);
  if (t.length) {
    const ok = t.some(
      name =>
        (name === 'null' && value === null) ||
        (name === 'integer' && typeof value === 'number' && Number.isInteger(value)) ||
        (name === 'number' && typeof value === 'number' && Number.isFinite(value)) ||
        (name === 'string' && typeof value === 'string') ||
        (name === 'boolean' && typeof value === 'boolean')
    );
    if (!ok) {
      return `expected ${describe(s)}`;
    }
  }
  if (typeof value === 'number') {
    if (s.minimum !== undefined && value < s.minimum) {
      return `must be >= ${s.minimum}`;
    }
    if (s.exclusiveMinimum !== undefined && value <= s.exclusiveMinimum) {
      return `must be > ${s.exclusiveMinimum}`;
    }
  }
  if (typeof value === 'string') {
    if (s.minLength !== undefined && value.length < s.minLength) {
      return `must not be empty`;
    }
    if (s.pattern !== undefined && !new RegExp(s.pattern).test(value)) {
      return `must match ${s.pattern}`;
    }
  }
  return null;
}

/** Turn what the user typed into a JSON value the schema accepts, or say why not. */
export function parseInput(field: IField, raw: string | boolean): Parsed {
  const s = field.schema;
  if (typeof raw === 'boolean') {
    return { ok: true, value: raw };
  }
  const text = raw.trim();
  if (text === '') {
    if (field.nullable || types(s).includes('null')) {
      return { ok: true, value: null };
    }
    return { ok: false, error: `required: ${describe(s)}` };
  }
  const candidates: unknown[] = [text];
  if (/^[-+]?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(text)) {
    candidates.unshift(Number(text));
  }
  for (const value of candidates) {
    if (check(s, value) === null) {
      return { ok: true, value };
    }
  }
  return { ok: false, error: check(s, candidates[0]) ?? `expected ${describe(s)}` };
}
