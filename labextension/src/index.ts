// JupyterLab plugin: adds the "GPU cells" panel to the left sidebar.

import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { KernelDefaultBridge } from './kernel';
import { GpuCellSidebar } from './sidebar';

const chipSvg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
<g class="jp-icon3" fill="#616161"><path d="M8 8h8v8H8z" opacity=".5"/>
<path d="M9 2h2v3H9zm4 0h2v3h-2zM9 19h2v3H9zm4 0h2v3h-2zM2 9h3v2H2zm0 4h3v2H2zm17-4h3v2h-3zm0 4h3v2h-3z"/>
<path d="M5 5h14v14H5zm2 2v10h10V7z"/></g></svg>`;

export const gpucellIcon = new LabIcon({ name: 'gpucell:chip', svgstr: chipSvg });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gpucell:sidebar',
  description: 'Pick hardware for %%gpu cells, watch workers, see what cells cost.',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell,
    tracker: INotebookTracker
  ): void => {
    const bridge = new KernelDefaultBridge(tracker);
    const sidebar = new GpuCellSidebar(bridge);
    sidebar.title.icon = gpucellIcon;
    sidebar.title.caption = 'GPU cells';
    labShell.add(sidebar, 'left', { rank: 600 });
  }
};

export default plugin;
