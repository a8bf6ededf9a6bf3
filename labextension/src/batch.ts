// "Run notebook as batch job": the command, its dialog, and the sidebar's Jobs section (POST/GET /gpucell/jobs).

import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './handler';
import { ICatalog, IJob, IJobList, IJobRequest } from './types';
import { el, formatMoney, formatPrice, formatSeconds, Section } from './widgets';

export const RUN_BATCH_COMMAND = 'gpucell:run-batch-job';

/** Jobs beyond this many (oldest first to go) are left to `gpucell jobs`. */
const MAX_JOBS_SHOWN = 10;

/** The broker's batch jobs, newest first: id, notebook, state, duration, cost. */
export class JobList extends Section {
  constructor() {
    super('Jobs', 'gpucell-jobs');
  }

  render(list: IJobList, fetchedAt: number): void {
    this._fetchedAt = fetchedAt;
    this.body.replaceChildren();
    if (list.jobs.length === 0) {
      this.body.appendChild(
        el(
          'div',
          'jp-GpuCell-empty',
          'No batch jobs. Run one from a notebook’s context menu or the command palette.',
          'gpucell-no-jobs'
        )
      );
      return;
    }
    for (const job of list.jobs.slice(0, MAX_JOBS_SHOWN)) {
      const row = el('div', `jp-GpuCell-job jp-mod-${job.state}`, undefined, 'gpucell-job');
      row.dataset.jobId = job.id;
      row.dataset.state = job.state;
      row.dataset.durationS = String(job.duration_s);
      row.title = job.error ? `${job.id}: ${job.error}` : job.id;
      const head = el('div', 'jp-GpuCell-jobHead');
      head.append(
        el('span', 'jp-GpuCell-jobId', job.id, 'gpucell-job-id'),
        el('span', `jp-GpuCell-state jp-mod-${job.state}`, job.state, 'gpucell-job-state')
      );
      const detail = el('div', 'jp-GpuCell-jobDetail');
      detail.append(
        el('span', 'jp-GpuCell-notebook', job.notebook, 'gpucell-job-notebook'),
        el('span', 'jp-GpuCell-jobNumbers', '', 'gpucell-job-numbers')
      );
      row.dataset.cost = String(job.cost);
      row.dataset.hardware = job.hardware;
      row.append(head, detail);
      if (job.error) {
        row.appendChild(el('div', 'jp-GpuCell-jobError', job.error, 'gpucell-job-error'));
      }
      this.body.appendChild(row);
    }
    this.tick();
  }

  /** The server could not list jobs (e.g. a broker without the Jobs service); the rest of the panel still works. */
  showError(message: string): void {
    this.body.replaceChildren(el('div', 'jp-GpuCell-empty', message, 'gpucell-jobs-error'));
  }

  /** Running jobs' durations advance between polls. */
  tick(): void {
    const elapsed = (Date.now() - this._fetchedAt) / 1000;
    for (const row of Array.from(this.body.querySelectorAll<HTMLElement>('.jp-GpuCell-job'))) {
      const numbers = row.querySelector<HTMLElement>('.jp-GpuCell-jobNumbers');
      if (!numbers) {
        continue;
      }
      const running = row.dataset.state === 'running';
      const duration = Number(row.dataset.durationS) + (running ? elapsed : 0);
      const hardware = row.dataset.hardware ? `${row.dataset.hardware} · ` : '';
      numbers.textContent = `${hardware}${formatSeconds(duration)} · ${formatMoney(Number(row.dataset.cost))}`;
    }
  }

  private _fetchedAt = Date.now();
}

/** What the dialog asks for. */
interface IBatchForm {
  hardware: string;
  parameters: string[];
}

/** The dialog's body: hardware (default: the sidebar's pick) and KEY=VALUE lines. */
class BatchJobForm extends Widget implements Dialog.IBodyWidget<IBatchForm> {
  constructor(path: string, catalog: ICatalog, picked: string) {
    super();
    this.addClass('jp-GpuCell-batchForm');
    this.node.dataset.testid = 'gpucell-batch-form';
    const labels = catalog.entries.map(entry => entry.label);
    const selected = labels.includes(picked) ? picked : catalog.default_hardware;

    const notebook = el('div', 'jp-GpuCell-batchNotebook');
    notebook.append('Notebook ', el('code', '', path));
    this._hardware = el('select', 'jp-mod-styled', undefined, 'gpucell-batch-hardware');
    for (const entry of catalog.entries) {
      const option = document.createElement('option');
      option.value = entry.label;
      option.textContent = `${entry.label} — ${formatPrice(entry.price_per_hour)}/h`;
      option.selected = entry.label === selected;
      this._hardware.appendChild(option);
    }
    this._parameters = el('textarea', 'jp-mod-styled', undefined, 'gpucell-batch-parameters');
    this._parameters.rows = 4;
    this._parameters.placeholder = 'lr=0.01\nepochs=3';
    this._parameters.spellcheck = false;

    const hardwareLabel = el('label', 'jp-GpuCell-batchField');
    hardwareLabel.append(el('span', '', 'Hardware for bare %%gpu cells'), this._hardware);
    const parametersLabel = el('label', 'jp-GpuCell-batchField');
    parametersLabel.append(
      el('span', '', 'Parameters, one KEY=VALUE per line (into the cell tagged “parameters”)'),
      this._parameters
    );
    this.node.append(notebook, hardwareLabel, parametersLabel);
  }

  getValue(): IBatchForm {
    return {
      hardware: this._hardware.value,
      parameters: this._parameters.value
        .split('\n')
        .map(line => line.trim())
        .filter(line => line.length > 0)
    };
  }

  private _hardware: HTMLSelectElement;
  private _parameters: HTMLTextAreaElement;
}

export interface IBatchOptions {
  tracker: INotebookTracker;
  browser: IDefaultFileBrowser | null;
  palette: ICommandPalette | null;
  icon: LabIcon;
  /** The sidebar's current pick ('' when none). */
  pickedHardware: () => string;
  /** Bring the Jobs section into view and poll now. */
  showJobs: () => void;
}

/** The notebook a command invocation means: the explicit path, the file browser's selection, or the current notebook. */
function targetPath(
  options: IBatchOptions,
  args: { path?: unknown; fromBrowser?: unknown }
): string {
  if (typeof args.path === 'string' && args.path) {
    return args.path;
  }
  const selected = (): string => {
    for (const item of options.browser?.selectedItems() ?? []) {
      if (item.type === 'notebook' || item.path.endsWith('.ipynb')) {
        return item.path;
      }
    }
    return '';
  };
  if (args.fromBrowser) {
    return selected();
  }
  return options.tracker.currentWidget?.context.path ?? selected();
}

/** Adds the command to the palette and to the file browser's context menu of notebooks. */
export function registerBatchCommand(app: JupyterFrontEnd, options: IBatchOptions): void {
  app.commands.addCommand(RUN_BATCH_COMMAND, {
    label: 'Run notebook as batch job',
    caption:
      'Run the saved notebook on the gpucell broker as a detached job (gpucell run --detach)',
    icon: options.icon,
    isEnabled: args => targetPath(options, args) !== '',
    execute: async args => {
      const path = targetPath(options, args);
      if (path) {
        await runAsBatchJob(path, options);
      }
    }
  });
  options.palette?.addItem({ command: RUN_BATCH_COMMAND, category: 'GPU cells' });
  app.contextMenu.addItem({
    command: RUN_BATCH_COMMAND,
    selector: '.jp-DirListing-item[data-file-type="notebook"]',
    args: { fromBrowser: true },
    rank: 60
  });
}

async function runAsBatchJob(path: string, options: IBatchOptions): Promise<void> {
  let catalog: ICatalog;
  try {
    catalog = await requestAPI<ICatalog>('catalog');
  } catch (error) {
    await showErrorMessage('Cannot run the notebook as a batch job', error as Error);
    return;
  }
  const result = await showDialog<IBatchForm>({
    title: 'Run notebook as batch job',
    body: new BatchJobForm(path, catalog, options.pickedHardware()),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run' })],
    focusNodeSelector: 'textarea'
  });
  if (!result.button.accept || !result.value) {
    return;
  }
  // The job runs the notebook as saved: unsaved edits in an open copy would silently be left out.
  const open = options.tracker.find(panel => panel.context.path === path);
  if (open && open.context.model.dirty) {
    await open.context.save();
  }
  const request: IJobRequest = { path, ...result.value };
  try {
    const job = await requestAPI<IJob>('jobs', { method: 'POST', body: JSON.stringify(request) });
    Notification.success(
      `Batch job ${job.id} started: ${job.notebook}${job.hardware ? ` on ${job.hardware}` : ''}`,
      { autoClose: 5000 }
    );
    options.showJobs();
  } catch (error) {
    await showErrorMessage('The batch job was not started', error as Error);
  }
}
