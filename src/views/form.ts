/**
 * The launch form, generated from the profile schema (see `../schema.ts`).
 *
 * Only fields the user changed are sent as overrides, so a profile's own values stay the
 * profile's.  Errors — from the client-side check or from the server's 400 — appear next to
 * the field they name.
 */
import { ApiError } from '../api';
import { ClusterModel } from '../model';
import { IField, describe, formFields, parseInput } from '../schema';
import { IClusterStatus, IProfile, IProfiles } from '../tokens';
import { h } from './dom';

export interface ILaunchFormOptions {
  model: ClusterModel;
  onLaunched: (status: IClusterStatus) => void;
  onError: (message: string) => void;
}

function current(profile: IProfile, field: IField): unknown {
  const base = profile.values[field.override];
  if (field.path.startsWith(`${profile.backend}.`)) {
    const section = profile.values[profile.backend];
    return section && typeof section === 'object' ? (section as Record<string, unknown>)[field.override] : undefined;
  }
  if (field.sub !== null) {
    return base && typeof base === 'object' ? (base as Record<string, unknown>)[field.sub] : null;
  }
  return base;
}

function show(value: unknown): string {
  return value === null || value === undefined ? '' : String(value);
}

export class LaunchForm {
  readonly node: HTMLFormElement;

  constructor(private readonly options: ILaunchFormOptions) {
    this.node = h('form', { className: 'ctrlstack-form', novalidate: true });
    this.node.addEventListener('submit', event => {
      event.preventDefault();
      void this.submit();
    });
  }

  render(profiles: IProfiles): void {
    this._profiles = profiles;
    if (!this._profile || !profiles.profiles.some(p => p.name === this._profile)) {
      this._profile = profiles.profiles[0]?.name ?? null;
    }
    this.build();
  }

  private build(): void {
    const profiles = this._profiles;
    this.node.replaceChildren();
    if (!profiles || !this._profile) {
      this.node.append(h('div', { className: 'ctrlstack-empty' }, 'no profiles configured'));
      return;
    }
    const profile = profiles.profiles.find(p => p.name === this._profile)!;
    const select = h(
      'select',
      { name: 'profile', 'data-path': 'profile' },
      ...profiles.profiles.map(p => h('option', { value: p.name, selected: p.name === profile.name }, p.name))
    );
    select.addEventListener('change', () => {
      this._profile = select.value;
      this.build();
    });
    this.node.append(this.row('profile', 'profile', select, profile.error ?? `backend ${profile.backend}`));
    const name = h('input', { name: 'name', 'data-path': 'name', placeholder: 'automatic', type: 'text' });
    name.addEventListener('input', () => this.setError('name', null));
    this.node.append(this.row('name', 'name', name, 'cluster name (letters, digits, . _ -)'));
    this._fields = formFields(profiles.schema, profiles.backends, profile.backend);
    for (const field of this._fields) {
      const value = current(profile, field);
      let input: HTMLInputElement | HTMLSelectElement;
      if (field.schema.enum) {
        input = h(
          'select',
          { 'data-path': field.path },
          ...field.schema.enum.map(v => h('option', { value: String(v), selected: String(v) === show(value) }, String(v)))
        );
      } else if (field.schema.type === 'boolean') {
        input = h('input', { type: 'checkbox', 'data-path': field.path, checked: value === true });
      } else {
        input = h('input', { type: 'text', 'data-path': field.path, value: show(value), placeholder: describe(field.schema) });
      }
      input.addEventListener('change', () => this.checkOne(field, input));
      input.addEventListener('input', () => this.setError(field.path, null));
      this.node.append(this.row(field.path, field.path, input, field.schema.description ?? ''));
    }
    this._button = h('button', { type: 'submit', className: 'jp-mod-styled jp-mod-accept ctrlstack-launch' }, 'Launch');
    this._status = h('span', { className: 'ctrlstack-form-status' });
    this.node.append(h('div', { className: 'ctrlstack-actions' }, this._button, this._status));
  }

  private row(path: string, label: string, input: HTMLElement, help: string): HTMLElement {
    return h(
      'div',
      { className: 'ctrlstack-field', 'data-field': path },
      h('label', { title: help }, label),
      input,
      h('div', { className: 'ctrlstack-field-error', 'data-error-for': path })
    );
  }

  private input(path: string): HTMLInputElement | HTMLSelectElement | null {
    return this.node.querySelector(`[data-path="${path}"]`);
  }

  private setError(path: string, message: string | null): void {
    const slot = this.node.querySelector(`[data-error-for="${path}"]`);
    if (slot) {
      slot.textContent = message ?? '';
      slot.parentElement?.classList.toggle('ctrlstack-mod-invalid', !!message);
    }
  }

  private raw(input: HTMLInputElement | HTMLSelectElement): string | boolean {
    return input instanceof HTMLInputElement && input.type === 'checkbox' ? input.checked : input.value;
  }

  private checkOne(field: IField, input: HTMLInputElement | HTMLSelectElement): boolean {
    const parsed = parseInput(field, this.raw(input));
    this.setError(field.path, parsed.ok ? null : parsed.error);
    return parsed.ok;
  }

  /** Overrides of the changed fields, or null when a field is invalid (errors shown). */
  private collect(profile: IProfile): { [field: string]: unknown } | null {
    const overrides: { [field: string]: unknown } = {};
    let valid = true;
    const objects: { [key: string]: { [sub: string]: unknown } } = {};
    const changedObjects = new Set<string>();
    for (const field of this._fields) {
      const input = this.input(field.path);
      if (!input) {
        continue;
      }
      const raw = this.raw(input);
      if (raw === '' && current(profile, field) === undefined) {
        this.setError(field.path, null);
        continue; // not set by the profile and left empty: the server's default applies
      }
      const parsed = parseInput(field, raw);
      this.setError(field.path, parsed.ok ? null : parsed.error);
      if (!parsed.ok) {
        valid = false;
        continue;
      }
      const changed = JSON.stringify(parsed.value) !== JSON.stringify(current(profile, field) ?? null);
      if (field.sub !== null) {
        (objects[field.override] ??= {})[field.sub] = parsed.value;
        if (changed) {
          changedObjects.add(field.override);
        }
      } else if (changed) {
        overrides[field.override] = parsed.value;
      }
    }
    for (const key of changedObjects) {
      const parts = objects[key];
      const empty = Object.values(parts).every(v => v === null);
      overrides[key] = empty ? null : parts;
    }
    return valid ? overrides : null;
  }

  private async submit(): Promise<void> {
    const profile = this._profiles?.profiles.find(p => p.name === this._profile);
    if (!profile || !this._button || !this._status) {
      return;
    }
    this.setError('name', null);
    this.setError('profile', null);
    const overrides = this.collect(profile);
    const nameInput = this.input('name');
    const name = nameInput ? nameInput.value.trim() : '';
    if (name && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
      this.setError('name', 'use 1-63 letters, digits, . _ or -, starting with a letter or digit');
      return;
    }
    if (overrides === null) {
      return;
    }
    this._button.disabled = true;
    this._status.textContent = 'launching…';
    try {
      const status = await this.options.model.api.launch({ profile: profile.name, name: name || null, overrides });
      this._status.textContent = '';
      if (nameInput) {
        nameInput.value = '';
      }
      this.options.onLaunched(status);
    } catch (reason) {
      this._status.textContent = '';
      if (reason instanceof ApiError && reason.status >= 400 && reason.status < 500) {
        const path = this.matchField(reason.field);
        const text = reason.allowed ? `${reason.message}` : reason.message;
        if (path) {
          this.setError(path, text);
        } else {
          this.options.onError(text);
        }
      } else {
        this.options.onError(reason instanceof Error ? reason.message : String(reason));
      }
    } finally {
      this._button.disabled = false;
    }
  }

  /** The form row for a server-named field (`adapt`, `adapt.minimum`, `host` or `local.host`). */
  private matchField(field: string | null): string | null {
    if (!field) {
      return null;
    }
    const plain = field.replace(/_/g, '-');
    if (plain === 'name' || plain === 'profile') {
      return plain;
    }
    const exact = this._fields.find(f => f.path === plain);
    if (exact) {
      return exact.path;
    }
    const loose = this._fields.find(f => f.override === plain || f.path.startsWith(`${plain}.`) || f.path.endsWith(`.${plain}`));
    return loose ? loose.path : null;
  }

  private _profiles: IProfiles | null = null;
  private _profile: string | null = null;
  private _fields: IField[] = [];
  private _button: HTMLButtonElement | null = null;
  private _status: HTMLElement | null = null;
}
