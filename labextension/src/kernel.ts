// Carries the picked hardware to notebook kernels over the `gpucell` comm (gpucell/magics/comm.py).

import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export const COMM_TARGET = 'gpucell';

/** What the current notebook's kernel last said about its default hardware. */
export interface IKernelDefault {
  notebook: string;
  /** The kernel's default, or '' while unknown (no kernel, `%load_ext gpucell` not run yet). */
  hardware: string;
  error: string;
}

interface IReply {
  ok?: boolean;
  action?: string;
  default_hardware?: string;
  error?: string;
}

/**
 * Sends set_default_hardware to the current notebook's kernel on every pick and whenever that kernel
 * starts, restarts or changes. A kernel that has not loaded gpucell yet closes our comm; when it later
 * runs `%load_ext gpucell` it opens one to us ("ready") and gets the pick then.
 */
export class KernelDefaultBridge {
  constructor(tracker: INotebookTracker) {
    this._tracker = tracker;
    tracker.widgetAdded.connect((_, panel) => this._watch(panel));
    tracker.forEach(panel => this._watch(panel));
    tracker.currentChanged.connect(() => {
      this._emitCurrent();
      void this._sendToCurrent();
    });
  }

  /** Fired whenever the current notebook's reported default changes. */
  get changed(): ISignal<this, IKernelDefault> {
    return this._changed;
  }

  get hardware(): string {
    return this._hardware;
  }

  /** The report for the current notebook. */
  get current(): IKernelDefault {
    const panel = this._tracker.currentWidget;
    const notebook = panel ? panel.context.path : '';
    const kernel = panel?.sessionContext.session?.kernel;
    const known = kernel ? this._reports.get(kernel.id) : undefined;
    return { notebook, hardware: known?.hardware ?? '', error: known?.error ?? '' };
  }

  /** Make `hardware` the default and tell the current notebook's kernel. */
  async setHardware(hardware: string): Promise<void> {
    this._hardware = hardware;
    await this._sendToCurrent();
  }

  private _watch(panel: NotebookPanel): void {
    const ctx = panel.sessionContext;
    const onKernel = (): void => {
      const kernel = ctx.session?.kernel;
      if (kernel) {
        this._listen(kernel);
        if (panel === this._tracker.currentWidget) {
          void this._sendToCurrent();
        }
      }
    };
    ctx.kernelChanged.connect(onKernel);
    ctx.statusChanged.connect((_, status) => {
      // A restarted kernel has lost its default: forget our comm and send again once it is up.
      if (status === 'restarting' || status === 'autorestarting') {
        const kernel = ctx.session?.kernel;
        if (kernel) {
          this._comms.delete(kernel.id);
          this._reports.delete(kernel.id);
          this._pendingRestart.add(kernel.id);
          this._emitCurrent();
        }
      } else if (status === 'idle') {
        const kernel = ctx.session?.kernel;
        if (kernel && this._pendingRestart.delete(kernel.id)) {
          onKernel();
        }
      }
    });
    panel.disposed.connect(() => this._emitCurrent());
    void ctx.ready.then(onKernel);
  }

  /** Accept the comm a kernel opens when `%load_ext gpucell` runs there. */
  private _listen(kernel: Kernel.IKernelConnection): void {
    if (this._listening.has(kernel)) {
      return;
    }
    this._listening.add(kernel);
    kernel.registerCommTarget(COMM_TARGET, comm => {
      this._adopt(kernel, comm);
      if (this._hardware) {
        comm.send({ action: 'set_default_hardware', hardware: this._hardware });
      } else {
        comm.send({ action: 'get_default_hardware' });
      }
    });
  }

  private _adopt(kernel: Kernel.IKernelConnection, comm: Kernel.IComm): void {
    this._comms.set(kernel.id, comm);
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      this._record(kernel.id, msg.content.data as IReply);
    };
    comm.onClose = () => {
      if (this._comms.get(kernel.id) === comm) {
        this._comms.delete(kernel.id);
      }
    };
  }

  private _record(kernelId: string, reply: IReply): void {
    const previous = this._reports.get(kernelId);
    this._reports.set(kernelId, {
      hardware: reply.default_hardware ?? previous?.hardware ?? '',
      error: reply.ok === false ? (reply.error ?? 'refused') : ''
    });
    this._emitCurrent();
  }

  private async _sendToCurrent(): Promise<void> {
    const kernel = this._tracker.currentWidget?.sessionContext.session?.kernel;
    if (!kernel || !this._hardware) {
      return;
    }
    this._listen(kernel);
    const data = { action: 'set_default_hardware', hardware: this._hardware };
    const open = this._comms.get(kernel.id);
    if (open && !open.isDisposed) {
      open.send(data);
      return;
    }
    // The open message carries the request, so a kernel with the target answers at once; one
    // without it (gpucell not loaded yet) just closes the comm.
    const comm = kernel.createComm(COMM_TARGET);
    this._adopt(kernel, comm);
    try {
      await comm.open(data).done;
    } catch {
      this._comms.delete(kernel.id);
    }
  }

  private _emitCurrent(): void {
    this._changed.emit(this.current);
  }

  private _tracker: INotebookTracker;
  private _hardware = '';
  private _comms = new Map<string, Kernel.IComm>();
  private _reports = new Map<string, { hardware: string; error: string }>();
  private _listening = new WeakSet<Kernel.IKernelConnection>();
  private _pendingRestart = new Set<string>();
  private _changed = new Signal<this, IKernelDefault>(this);
}
