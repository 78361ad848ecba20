"""Run reports: data → charts → a self-contained HTML page, and markdown for the Prefect UI.

``data`` holds what a report shows (:class:`~gmm_dask.report.data.ReportData`); ``text`` writes
numbers ('–', never 'nan'); ``family`` builds the components' family tree; ``charts`` renders
matplotlib figures to inline SVG and ``charts_segments``, ``charts_model``, ``charts_forecast``
draw them; ``tables`` and ``html`` make the page (:func:`~gmm_dask.report.html.html_report`);
``markdown`` the Prefect UI's artifacts (:func:`~gmm_dask.report.markdown.markdown_summary`,
:func:`~gmm_dask.report.markdown.bic_markdown`). Nothing here reads tables or models.
"""
