"""One module per tab (and one for the control column): handlers are module functions taking the `Screen`
(the service and the page) that return `{component: value}`; `explorer.ui.wiring` binds them to events."""
